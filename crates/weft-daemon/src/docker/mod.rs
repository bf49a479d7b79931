//! Docker integration: the API proxy that puts `docker run` containers on the overlay
//! ([`proxy`]), the libnetwork remote network and IPAM driver ([`plugin`]), and what both
//! share — the engine client, and attaching a proxy-made container when it starts.
//!
//! Containers made through the proxy carry `/w/w` (weft-wait) as their entrypoint, so they are
//! recognised wherever they are started from: through the proxy (which answers the start only
//! once the container is attached), by `docker start` on the engine's own socket or a restart
//! policy (the events watcher attaches them), or before a router restart (attached again at
//! start-up). A container whose process dies is detached at once (its `die` event), its
//! names removed and its addresses released; the reaper would notice within a second anyway.

pub mod plugin;
pub mod proxy;
pub mod rewrite;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{EventsOptions, KillContainerOptions, ListContainersOptions};
use futures::StreamExt;
use tokio::sync::{Mutex, watch};
use tracing::{debug, info, warn};
use weft_api::types::{AddrSpec, AttachRequest};

use crate::api::{self, ApiError, App};

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
            EngineAddr::parse("unix:///var/run/docker.sock"),
            Ok(EngineAddr::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            EngineAddr::parse("/run/d.sock"),
            Ok(EngineAddr::Unix("/run/d.sock".into()))
        );
        assert_eq!(
            EngineAddr::parse("tcp://10.0.0.1:2375/"),
            Ok(EngineAddr::Tcp("10.0.0.1:2375".into()))
        );
        assert_eq!(
            EngineAddr::parse("tcp://docker.example:2376").map(|a| a.to_string()),
            Ok("tcp://docker.example:2376".into())
        );
        for bad in [
            "tcp://nowhere",
            "tcp://:2375",
            "http://x:1",
            "relative.sock",
        ] {
            let e = EngineAddr::parse(bad).unwrap_err();
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

impl EngineAddr {
    pub fn parse(api: &str) -> Result<EngineAddr, String> {
        if let Some(hp) = api.strip_prefix("tcp://") {
            let hp = hp.trim_end_matches('/');
            let ok = hp
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            return if ok {
                Ok(EngineAddr::Tcp(hp.to_string()))
            } else {
                Err(format!(
                    "--docker-api {api:?}: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:2375)"
                ))
            };
        }
        socket_path(api).map(EngineAddr::Unix).ok_or_else(|| {
            format!(
                "--docker-api {api:?}: expected unix:///PATH (default unix:///var/run/docker.sock) or tcp://HOST:PORT"
            )
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

/// The Docker side of a starting router: the engine if it answers, and the proxy's bound
/// listeners until the router's other parts exist to serve them.
pub struct Startup {
    pub engine: Option<Arc<Engine>>,
    pub status: DockerStatus,
    listeners: Vec<proxy::Listener>,
}

impl Startup {
    /// Connects to the engine and binds the proxy; an engine that does not answer is reported
    /// in the status (the router runs without Docker), a proxy address that cannot be bound is
    /// an error.
    pub async fn connect(
        settings: Option<&DockerSettings>,
        router: String,
    ) -> Result<Startup, String> {
        let mut st = Startup {
            engine: None,
            status: DockerStatus::default(),
            listeners: Vec::new(),
        };
        let Some(s) = settings else {
            return Ok(st);
        };
        let engine = match Engine::connect(s.clone(), router).await {
            Ok(e) => e,
            Err(why) => {
                warn!("{why}: running without the Docker proxy and plugin");
                st.status.unavailable = Some(why);
                return Ok(st);
            }
        };
        let tls = s
            .proxy_tls
            .as_ref()
            .map(|t| t.server_config())
            .transpose()?;
        st.status.proxy_tls = s.proxy_tls.clone();
        for addr in &s.proxy_listen {
            let (l, shown) = proxy::listen(addr, &engine.addr, tls.clone())?;
            st.status.proxy_addrs.push(shown);
            st.listeners.push(l);
        }
        if !s.wait_binary.is_file() && !s.proxy_listen.is_empty() {
            warn!(
                "weft-wait is missing at {}: containers created through the Docker proxy will not start (build it with scripts/build-wait.sh, or give --wait-binary)",
                s.wait_binary.display()
            );
        }
        st.status.plugin_driver = s.plugin_socket.as_deref().map(plugin::driver_name);
        info!(
            api = %s.api,
            proxy = ?st.status.proxy_addrs,
            plugin = ?st.status.plugin_driver,
            "Docker integration on"
        );
        st.engine = Some(engine);
        Ok(st)
    }

    /// Serves the proxy and the plugin and follows the engine's events, as tasks of `tasks`.
    pub async fn serve(
        self,
        app: &Arc<App>,
        host: &crate::hostnet::HostNet,
        mtu: u32,
        tasks: &mut tokio::task::JoinSet<()>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), String> {
        let Some(engine) = self.engine else {
            return Ok(());
        };
        let proxy = Arc::new(proxy::Proxy {
            app: app.clone(),
            engine: engine.clone(),
        });
        for l in self.listeners {
            tasks.spawn(proxy::serve(proxy.clone(), l, shutdown.clone()));
        }
        if let Some(sock) = &engine.settings.plugin_socket {
            let p = plugin::Plugin::new(app.clone(), host.netlink.clone(), host.bridge.index, mtu);
            plugin::serve(p, sock, shutdown.clone()).await?;
            // Docker calls back into the plugin to make it: not on the start-up path.
            let engine = engine.clone();
            tasks.spawn(async move { ensure_plugin_network(&engine).await });
        }
        tasks.spawn(watch_events(app.clone(), engine, shutdown.clone()));
        Ok(())
    }
}

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
    attaching: Mutex<()>,
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
    pub async fn connect(settings: DockerSettings, router: String) -> Result<Arc<Engine>, String> {
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
        .map_err(|e| format!("{}: {e}", settings.api))?;
        let client = tokio::time::timeout(Duration::from_secs(3), client.negotiate_version())
            .await
            .map_err(|_| format!("Docker at {} did not answer within 3 s", settings.api))?
            .map_err(|e| format!("Docker is not running at {}: {e}", settings.api))?;
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
    fn from_inspect(c: ContainerInspectResponse) -> Result<Container, String> {
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

    fn config(&self) -> Option<&bollard::models::ContainerConfig> {
        self.inspect.config.as_ref()
    }

    /// Made by our proxy: its entrypoint is weft-wait.
    fn proxied(&self) -> bool {
        self.config()
            .and_then(|c| c.entrypoint.as_ref())
            .and_then(|e| e.first())
            .is_some_and(|e| e == rewrite::WAIT_PATH)
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.config()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(key))
            .map(String::as_str)
    }

    fn env(&self) -> Vec<String> {
        self.config()
            .and_then(|c| c.env.clone())
            .unwrap_or_default()
    }

    fn multicast_route(&self) -> bool {
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

/// Attaches a container made by our proxy, if it is running and not opted out; returns
/// `Ok(false)` if it is not one to attach. Idempotent: an attached container keeps its
/// addresses.
pub async fn ensure_attached(app: &App, engine: &Engine, id: &str) -> Result<bool, String> {
    let _one_at_a_time = engine.attaching.lock().await;
    attach_locked(app, engine, id).await
}

async fn attach_locked(app: &App, engine: &Engine, id: &str) -> Result<bool, String> {
    let c = match engine.inspect(id).await {
        Ok(c) => c,
        Err(e) => return Err(format!("inspecting container {id}: {e}")),
    };
    let c = match Container::from_inspect(c) {
        Ok(c) => c,
        // Gone again already (a short-lived container): nothing to attach.
        Err(_) => return Ok(false),
    };
    if !c.proxied() || c.label(ROUTER_LABEL).is_some_and(|r| r != engine.router) {
        return Ok(false);
    }
    // The network it was started into, wherever that was set (an old client's start body
    // sets it there): only the default bridge, or none, is weft's to attach.
    let mode = c
        .inspect
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    if !rewrite::attachable_mode(&mode) {
        info!(container = %c.id, name = %c.name, "leaving the container off weft: it has '--net={mode}'");
        return Ok(false);
    }
    let s = &engine.settings;
    let env = c.env();
    let specs = rewrite::cidr_specs(rewrite::cidr_env(&env), s.no_default_ipalloc)?;
    let Some(specs) = specs else {
        return Ok(false);
    };
    let hostname = if s.without_dns { None } else { c.fqdn.clone() };
    let req = AttachRequest {
        addrs: specs.iter().map(spec_string).collect(),
        multicast_route: c.multicast_route(),
        hostname: hostname.clone(),
        without_dns: s.without_dns || hostname.is_none(),
        ..AttachRequest::new(c.netns.clone())
    };
    // Attached already (the proxy's start and the start event both get here).
    let attached = app.attacher.attachments().await;
    if attached
        .iter()
        .any(|a| a.id == c.id && a.netns == Path::new(&c.netns))
    {
        return Ok(true);
    }
    let r = match api::attach_container(app, req, Some(c.id.clone())).await {
        Ok(r) => r,
        Err(e) => {
            // A container that ran and exited meanwhile (`docker run --rm ... ip addr`, which
            // the start event's attach let run) needs no network any more: not a failure to
            // report. Its process is gone before the engine says so, hence both checks.
            let process_gone = !Path::new(&c.netns).exists();
            let still = engine
                .inspect(id)
                .await
                .ok()
                .and_then(|i| Container::from_inspect(i).ok())
                .is_some_and(|now| now.netns == c.netns);
            if process_gone || !still {
                return Ok(false);
            }
            return Err(e.message().to_string());
        }
    };
    info!(container = %c.id, name = %c.name, addrs = ?r.addresses, "Docker container attached");
    if !s.no_rewrite_hosts
        && let Some(path) = c.inspect.hosts_path.as_deref().filter(|p| !p.is_empty())
    {
        let ips: Vec<IpAddr> = r.addresses.iter().map(|n| IpAddr::V4(n.addr())).collect();
        let host = c.config().and_then(|k| k.hostname.as_deref()).unwrap_or("");
        let domain = c
            .config()
            .and_then(|k| k.domainname.as_deref())
            .unwrap_or("");
        let extra = c
            .inspect
            .host_config
            .as_ref()
            .and_then(|h| h.extra_hosts.clone())
            .unwrap_or_default();
        let text = rewrite::hosts_file(host, domain, &ips, &extra);
        // Written in place: the container sees this file through a bind mount.
        if let Err(e) = std::fs::write(Path::new(path), text) {
            warn!(container = %c.id, "rewriting {path}: {e}");
        }
    }
    Ok(true)
}

fn spec_string(s: &AddrSpec) -> String {
    match s {
        AddrSpec::Exact(n) => n.to_string(),
        AddrSpec::Subnet(n) => format!("net:{n}"),
        AddrSpec::DefaultSubnet => "net:default".into(),
    }
}

/// Follows the engine's container events: proxy-made containers started without the proxy
/// are attached, containers that die are detached at once. Re-attaches running ones first
/// (after a router restart).
pub async fn watch_events(app: Arc<App>, engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let mut delay = Duration::from_secs(1);
    loop {
        attach_running(&app, &engine).await;
        let opts = EventsOptions {
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                (
                    "event".to_string(),
                    vec![
                        "start".to_string(),
                        "die".to_string(),
                        "destroy".to_string(),
                    ],
                ),
            ])),
            ..Default::default()
        };
        let mut events = engine.client.events(Some(opts));
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) => {
                        delay = Duration::from_secs(1);
                        let id = ev.actor.and_then(|a| a.id).unwrap_or_default();
                        match ev.action.as_deref() {
                            Some("start") => {
                                let (app, engine) = (app.clone(), engine.clone());
                                engine.started(&id).await;
                                tokio::spawn(async move {
                                    if let Err(e) = ensure_attached(&app, &engine, &id).await {
                                        warn!(container = %id, "attaching the started container failed: {e}");
                                    }
                                    register_plugin_names(&app, &engine, &id).await;
                                });
                            }
                            Some("destroy") => {
                                debug!(container = %id, "container removed");
                                api::container_destroyed(&app, &id).await;
                            }
                            Some("die") => {
                                debug!(container = %id, "container died");
                                let gone = app.attacher.reap().await;
                                api::release_gone(&app, gone).await;
                                // Names of a container on a plugin network (no-op otherwise).
                                crate::dns_api::unregister(&app, &id, None).await;
                            }
                            _ => {}
                        }
                    }
                    Some(Err(e)) => {
                        warn!("Docker events: {e}; reconnecting");
                        break;
                    }
                    None => break,
                },
                _ = shutdown.changed() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// After a restart: the networks our plugin made earlier (Docker does not create them again).
async fn recall_plugin_networks(engine: &Engine) {
    let Some(sock) = &engine.settings.plugin_socket else {
        return;
    };
    let driver = plugin::driver_name(sock);
    let opts = bollard::query_parameters::ListNetworksOptions {
        filters: Some(HashMap::from([("driver".to_string(), vec![driver])])),
    };
    let Ok(list) = engine.client.list_networks(Some(opts)).await else {
        return;
    };
    let mut nets = engine.plugin_networks.lock().await;
    for n in list {
        if let Some(id) = n.id {
            let mcast = n
                .options
                .unwrap_or_default()
                .iter()
                .any(|(k, v)| plugin::MULTICAST_OPTIONS.contains(&k.as_str()) && v != "false");
            nets.entry(id).or_insert(mcast);
        }
    }
}

/// After a router restart, the addresses of Docker containers follow what happened while it
/// was away, as Weave's pruning did: removed containers' are released, stopped ones' wait
/// out the grace period.
async fn prune_owned(app: &App, engine: &Engine) {
    let opts = ListContainersOptions {
        all: true,
        ..Default::default()
    };
    let Ok(list) = engine.client.list_containers(Some(opts)).await else {
        return;
    };
    let running: HashMap<String, bool> = list
        .into_iter()
        .filter_map(|c| {
            let running = c.state.is_some_and(|s| s.to_string() == "running");
            Some((c.id?, running))
        })
        .collect();
    for ident in api::owned_idents(app).await {
        if !is_container_id(&ident) {
            continue;
        }
        match running.get(&ident) {
            None => {
                info!(container = %ident, "the container was removed while the router was away: releasing its addresses");
                api::container_destroyed(app, &ident).await;
            }
            Some(false) => engine.died(&ident).await,
            Some(true) => {}
        }
    }
}

async fn attach_running(app: &App, engine: &Engine) {
    recall_plugin_networks(engine).await;
    prune_owned(app, engine).await;
    let list = match engine
        .client
        .list_containers(Some(ListContainersOptions::default()))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            warn!("listing Docker containers: {e}");
            return;
        }
    };
    for c in list {
        let Some(id) = c.id else { continue };
        if let Err(e) = ensure_attached(app, engine, &id).await {
            warn!(container = %id, "re-attaching a running container failed: {e}");
        }
        // Names of containers on our plugin's networks come back after a router restart.
        register_plugin_names(app, engine, &id).await;
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
    let driver = plugin::driver_name(sock);
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
            plugin::MULTICAST_OPTIONS[0].to_string(),
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

/// Resolves a container argument of the CLI: a netns name, path or PID as before, else a
/// Docker container's name or id.
pub async fn resolve(app: &App, spec: &str) -> Result<(String, Option<Container>), ApiError> {
    if weft_linux::netns::resolve(spec).is_ok() {
        return Ok((spec.to_string(), None));
    }
    let not_found = |why: String| ApiError::new(axum::http::StatusCode::NOT_FOUND, why);
    let Some(engine) = app.docker.as_ref() else {
        return Err(not_found(format!(
            "container {spec:?} not found: no such network namespace name, path or PID (and Docker is not connected)"
        )));
    };
    match find(engine, spec).await {
        Ok(c) => Ok((c.netns.clone(), Some(c))),
        Err(e) => Err(not_found(format!(
            "container {spec:?} not found: no such network namespace name, path or PID, and Docker says: {e}"
        ))),
    }
}

/// Registers the name of a container on one of our plugin's networks, with its address there
/// (Weave's plugin did: `<hostname>.<domain>` and `<container name>.<domain>`).
async fn register_plugin_names(app: &App, engine: &Engine, id: &str) {
    let Some(dns) = app.dns.as_ref() else { return };
    if engine.settings.without_dns {
        return;
    }
    let ours = engine.plugin_network_ids().await;
    if ours.is_empty() {
        return;
    }
    let Ok(c) = engine.inspect(id).await else {
        return;
    };
    let addrs: Vec<std::net::Ipv4Addr> = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .into_iter()
        .flatten()
        .filter(|(_, ep)| ep.network_id.as_ref().is_some_and(|n| ours.contains(n)))
        .filter_map(|(_, ep)| ep.ip_address.as_deref()?.parse().ok())
        .collect();
    if addrs.is_empty() {
        return;
    }
    let domain = dns.config.domain.clone();
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
    for n in names {
        if let Err(e) = crate::dns_api::register(app, &n, id, &addrs).await {
            warn!(container = %id, "registering {n}: {}", e.message());
        }
    }
}
