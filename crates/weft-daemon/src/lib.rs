//! The weft router daemon: the tokio shell around `weft-core`.
//!
//! [`run`] is what `weft router` and the tests both call: it sets up the host network (bridge
//! and TAP), binds the control port, the sleeve socket and the HTTP API, then runs four kinds
//! of tasks until `shutdown` fires:
//! - the control task ([`control`]) owning the mesh state machine;
//! - the data plane ([`dataplane`]) forwarding frames between TAP and UDP;
//! - the accept loop and per-connection reader/writer tasks;
//! - the HTTP API ([`api`]) and a reaper that notices containers that went away.
#![forbid(unsafe_code)]

pub mod attach;
pub mod control;
pub mod dataplane;
pub mod dataplane_msg;
pub mod dns;
pub mod docker;
pub mod engine;
pub mod fastdp;
pub mod host;
pub mod hostnet;
pub mod http;
pub mod metrics;
pub mod secrets;
pub mod service;
pub mod state;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use weft_core::ipam::{InitMode, IpamConfig, default_quorum};
use weft_core::mesh::{CryptoSettings, RouterConfig, Timing};
use weft_core::node::Node;
use weft_linux::netlink::Netlink;
use weft_proto::PeerName;

use crate::state::{StateDir, StateError};

pub const TARGETS_FILE: &str = "targets.json";
/// Peers we exchanged data with (`ip:port`, saved by the control task), redialled by
/// `--resume`: a restarted router that was dialled by its peers (it has no targets of its
/// own) would otherwise wait for their reconnect backoff, up to several seconds, while their
/// kernels' fast-path entries for it expire.
pub const KNOWN_PEERS_FILE: &str = "known-peers.json";
pub const IPAM_FILE: &str = "ipam.json";

/// The tag a range's allocations are set aside under (`ipam.json.range-10.32.0.0-12`).
fn range_tag(range: &str) -> String {
    format!("range-{}", range.replace('/', "-"))
}
pub const PID_FILE: &str = "weft.pid";
pub const LOG_FILE: &str = "weft.log";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone, Debug)]
pub struct Config {
    pub name: Option<PeerName>,
    pub nickname: String,
    /// Address to bind the control port and sleeve socket to (all if unset).
    pub host: Option<IpAddr>,
    pub port: u16,
    pub http_addr: SocketAddr,
    /// Read-only status, report and metrics (Weave's `--status-addr`); `None`: off.
    pub status_addr: Option<SocketAddr>,
    /// Only `/metrics` (Weave's `--metrics-addr`); `None`: off.
    pub metrics_addr: Option<SocketAddr>,
    pub conn_limit: usize,
    pub discovery: bool,
    pub resume: bool,
    pub peers: Vec<String>,
    pub mtu: Option<u32>,
    pub bridge: String,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub timing: Timing,
    /// IP address management; `None` disables it (`--ipalloc-range ""`).
    pub ipam: Option<IpamSettings>,
    /// weftDNS; `None` disables it (`--no-dns`).
    pub dns: Option<DnsSettings>,
    /// Accepted passwords, the first used to dial; empty: no encryption.
    pub passwords: Vec<secrets::Password>,
    /// Peers in these may exchange data (not control) unencrypted with us, if they trust us.
    pub trusted_subnets: Vec<Ipv4Net>,
    /// Use the kernel's VXLAN fast path where it works (`--no-fastdp` turns it off).
    pub fastdp: bool,
    /// The Docker proxy and plugin; `None`: no Docker integration (`--docker-api ""`).
    pub docker: Option<engine::DockerSettings>,
    /// Sleeve data-plane workers, each with a TAP queue and a socket of its own; 0: one per
    /// core (`--sleeve-workers`).
    pub sleeve_workers: usize,
    /// The data cipher to offer with a password (`--data-cipher`); `None`: AES-256-GCM if
    /// this CPU has AES instructions, else ChaCha20-Poly1305.
    pub data_cipher: Option<weft_core::crypto::DataCipher>,
}

/// The most sleeve workers one may ask for (a TAP has at most 256 queues).
const MAX_WORKERS: usize = 64;

/// The most sleeve workers "one per core" gives: beyond this, a host's other work needs the
/// cores more than the sleeve does.
const MAX_AUTO_WORKERS: usize = 8;

impl Config {
    /// How many sleeve workers run: as asked, or one per core up to [`MAX_AUTO_WORKERS`].
    pub fn workers(&self) -> usize {
        match self.sleeve_workers {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_AUTO_WORKERS),
            n => n,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DnsSettings {
    pub domain: String,
    /// Default: the docker0 bridge's address, else all addresses, port 53.
    pub listen: Option<SocketAddr>,
    pub ttl: u32,
    pub resolv_conf: PathBuf,
    pub fallback_timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            domain: "weave.local.".into(),
            listen: None,
            ttl: 1,
            resolv_conf: "/etc/resolv.conf".into(),
            fallback_timeout: Duration::from_secs(5),
        }
    }
}

/// Where the DNS server listens by default: docker0's address if there is one (containers
/// started by Docker reach it there), else every address.
async fn default_dns_listen(nl: &Netlink) -> SocketAddr {
    if let Ok(Some(l)) = nl.link_by_name("docker0").await
        && let Ok(addrs) = nl.addresses(Some(l.index)).await
        && let Some((_, n)) = addrs.iter().find(|(_, n)| n.addr().is_ipv4())
    {
        return SocketAddr::new(n.addr(), 53);
    }
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 53)
}

#[derive(Clone, Debug)]
pub struct IpamSettings {
    pub range: Ipv4Net,
    pub default_subnet: Option<Ipv4Net>,
    /// `consensus[=N]`, `seed=NAME,...` or `observer` (Weave's `--ipalloc-init`).
    pub init: Option<String>,
    pub timeout: Duration,
}

impl Default for IpamSettings {
    fn default() -> Self {
        IpamSettings {
            range: "10.32.0.0/12".parse().expect("valid CIDR"),
            default_subnet: None,
            init: None,
            timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The first of the three steps of a start (then [`Listeners::bind`], then [`run_with`]):
    /// every problem with the configuration at once, found without touching the host, so a
    /// bad flag never leaves a bridge, a rule or a state file behind.
    pub fn validate(self) -> Result<Valid, DaemonError> {
        self.check().map(|()| Valid(self))
    }

    /// As [`Config::validate`], keeping the configuration.
    pub fn check(&self) -> Result<(), DaemonError> {
        let mut problems = Vec::new();
        if self.resume && !self.peers.is_empty() {
            problems.push(
                "--resume cannot be combined with peer arguments: it reconnects to the peers of the previous run".to_string(),
            );
        }
        if let Some(m) = self.mtu
            && !(hostnet::MIN_MTU..=hostnet::MAX_MTU).contains(&m)
        {
            problems.push(format!(
                "--mtu {m} is out of range; use {}..{}",
                hostnet::MIN_MTU,
                hostnet::MAX_MTU
            ));
        }
        if self.sleeve_workers > MAX_WORKERS {
            problems.push(format!(
                "--sleeve-workers {} is too many; use 1..{MAX_WORKERS}, or 0 for one per core",
                self.sleeve_workers
            ));
        }
        if self.bridge.is_empty() || self.bridge.len() > 11 {
            // The bridge's devices are named after it with up to 4 more bytes (`-tap`), and
            // Linux allows 15.
            problems.push(format!(
                "--bridge {:?}: give a name of 1 to 11 characters",
                self.bridge
            ));
        }
        if let Some(s) = &self.ipam {
            if s.range.prefix_len() > 30 {
                problems.push(format!(
                    "--ipalloc-range {} is too small: it needs at least 4 addresses",
                    s.range
                ));
            }
            if let Some(d) = s.default_subnet
                && !s.range.contains(&d.network())
                && !d.contains(&s.range.network())
            {
                problems.push(format!(
                    "--ipalloc-default-subnet {d} does not overlap --ipalloc-range {}",
                    s.range
                ));
            }
            let initial = if self.resume { 0 } else { self.peers.len() };
            if let Err(e) = parse_ipalloc_init(s.init.as_deref(), initial) {
                problems.push(e);
            }
        }
        match problems.len() {
            0 => Ok(()),
            1 => Err(DaemonError::Config(problems.remove(0))),
            n => Err(DaemonError::Config(format!(
                "{n} problems with the configuration: {}",
                problems.join("; ")
            ))),
        }
    }
}

/// Parses `--ipalloc-init`; the default quorum counts the initial peers, as Weave does.
pub fn parse_ipalloc_init(spec: Option<&str>, initial_peers: usize) -> Result<InitMode, String> {
    let bad = |s: &str| {
        format!(
            "invalid --ipalloc-init {s:?}: use consensus, consensus=N, seed=PEERNAME,... or observer"
        )
    };
    match spec {
        None | Some("consensus") => Ok(InitMode::Consensus {
            quorum: default_quorum(initial_peers),
        }),
        Some("observer") => Ok(InitMode::Observer),
        Some(s) => {
            if let Some(n) = s.strip_prefix("consensus=") {
                let n: usize = n.parse().map_err(|_| bad(s))?;
                if n == 0 {
                    return Err(bad(s));
                }
                Ok(InitMode::Consensus { quorum: n / 2 + 1 })
            } else if let Some(list) = s.strip_prefix("seed=") {
                let seeds = list
                    .split(',')
                    .map(|p| {
                        p.trim()
                            .parse::<PeerName>()
                            .map_err(|e| format!("--ipalloc-init seed: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if seeds.is_empty() {
                    return Err(bad(s));
                }
                Ok(InitMode::Seed(seeds))
            } else {
                Err(bad(s))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Linux(#[from] weft_linux::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Attach(#[from] attach::AttachError),
    /// A task the router cannot run without ended.
    #[error("{0}")]
    TaskDied(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// 64 random bits from the kernel (peer names, UIDs, MACs).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if !ok {
        // Never expected on Linux; fall back to something that still differs per process.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ (u64::from(std::process::id()) << 32);
    }
    u64::from_ne_bytes(b)
}

/// A configuration [`Config::validate`] accepted: the only kind a router runs with.
#[derive(Debug)]
pub struct Valid(Config);

impl Valid {
    pub fn config(&self) -> &Config {
        &self.0
    }
}

/// The sockets a router serves, bound before anything on the host changes: an address in use
/// (another router running) fails the start with nothing to undo. Ports 0 take any free port
/// (tests running routers side by side).
pub struct Listeners {
    control: TcpListener,
    /// One per sleeve worker, all on the sleeve's port.
    sleeve: Vec<Arc<UdpSocket>>,
    http: TcpListener,
    /// `--status-addr` and `--metrics-addr` (true: metrics only).
    extra_http: Vec<(TcpListener, bool)>,
}

impl Listeners {
    pub async fn bind(valid: &Valid) -> Result<Listeners, DaemonError> {
        let cfg = valid.config();
        let bind_ip = cfg.host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let control_addr = SocketAddr::new(bind_ip, cfg.port);
        let control = TcpListener::bind(control_addr)
            .await
            .map_err(io_err(format!(
                "listening on TCP {control_addr} (is another weft router running here?)"
            )))?;
        // The sleeve shares the control port's number, as Weave's did (6783 on TCP and UDP).
        let sleeve_addr = control.local_addr().unwrap_or(control_addr);
        let workers = cfg.workers();
        let mut sleeve = Vec::with_capacity(workers);
        for _ in 0..workers {
            let udp = weft_linux::udp::bind_sleeve(sleeve_addr, workers > 1)?;
            sleeve.push(Arc::new(
                UdpSocket::from_std(udp)
                    .map_err(io_err(format!("registering UDP {sleeve_addr}")))?,
            ));
        }
        let http = TcpListener::bind(cfg.http_addr)
            .await
            .map_err(io_err(format!("listening on HTTP {}", cfg.http_addr)))?;
        let mut extra_http = Vec::new();
        for (addr, flag, metrics_only) in [
            (cfg.status_addr, "--status-addr", false),
            (cfg.metrics_addr, "--metrics-addr", true),
        ] {
            if let Some(addr) = addr {
                let l = TcpListener::bind(addr).await.map_err(io_err(format!(
                    "listening on {flag} {addr} (give another address, or \"\" to turn it off)"
                )))?;
                extra_http.push((l, metrics_only));
            }
        }
        Ok(Listeners {
            control,
            sleeve,
            http,
            extra_http,
        })
    }

    /// Where weft's HTTP API listens.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr().ok()
    }

    /// Where the control port listens.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.local_addr().ok()
    }
}

/// Runs the router until `shutdown` becomes true: [`Config::validate`], [`Listeners::bind`],
/// [`run_with`].
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<(), DaemonError> {
    let valid = cfg.validate()?;
    let listeners = Listeners::bind(&valid).await?;
    let host = weft_linux::host::LinuxHost::new(Netlink::new()?);
    run_with(valid, listeners, host, shutdown).await
}

/// Runs a validated router on bound listeners until `shutdown` becomes true; containers are
/// plugged and the fast path programmed through `host`.
pub async fn run_with(
    valid: Valid,
    listeners: Listeners,
    host_ops: Arc<dyn weft_linux::host::HostOps>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let cfg = valid.0;
    let Listeners {
        control: listener,
        sleeve: udp,
        http,
        extra_http,
    } = listeners;
    // The port as bound (the one asked for, or a free one for port 0).
    let port = listener.local_addr().map_or(cfg.port, |a| a.port());
    let state = StateDir::open(&cfg.state_dir)?;
    std::fs::create_dir_all(&cfg.run_dir)
        .map_err(io_err(format!("creating {}", cfg.run_dir.display())))?;
    let name = state.peer_name(cfg.name, random_u64())?;
    let targets: Vec<String> = if cfg.resume {
        state.load_json(TARGETS_FILE)?
    } else {
        cfg.peers.clone()
    };
    let resolved = service::resolve_peers(&targets, cfg.port)
        .await
        .map_err(|e| DaemonError::Config(e.join("; ")))?;
    state.save_json(TARGETS_FILE, &targets)?;

    let nl = Netlink::new()?;
    let bridge_tap = format!("{}-tap", cfg.bridge);
    // With a password only trusted pairs exchange plaintext, which VXLAN can carry.
    let encrypted = !cfg.passwords.is_empty();
    let use_fastdp = cfg.fastdp && (!encrypted || !cfg.trusted_subnets.is_empty());
    let (vx, hb) = (
        fastdp::vxlan_name(&cfg.bridge),
        fastdp::heartbeat_name(&cfg.bridge),
    );
    let ours = [
        cfg.bridge.as_str(),
        bridge_tap.as_str(),
        vx.as_str(),
        hb.as_str(),
    ];
    let underlay = hostnet::underlay(&nl, cfg.host, &ours).await;
    // Sleeve datagrams larger than one underlay packet are cut by weft (IPv4 20 + UDP 8).
    let path_payload = underlay.as_ref().ok().map(|(_, u)| *u as usize - 28);
    // In range: checked by `Config::validate`.
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => {
            let (ifname, under) = underlay?;
            // Sized for the path we expect to carry most data: VXLAN unless every link is
            // encrypted. The sleeve carries the few bytes more by fragmenting.
            let (m, why) = if use_fastdp && !encrypted {
                (
                    under.saturating_sub(fastdp::VXLAN_OVERHEAD),
                    "VXLAN encapsulation".to_string(),
                )
            } else {
                (
                    hostnet::overlay_mtu(under, encrypted),
                    format!(
                        "sleeve encapsulation{}",
                        if encrypted { ", encrypted" } else { "" }
                    ),
                )
            };
            info!(
                underlay = %ifname,
                underlay_mtu = under,
                overlay_mtu = m,
                "overlay MTU = underlay MTU - {} ({why})",
                under - m,
            );
            m
        }
    };
    let (host, tap) = hostnet::setup(nl.clone(), &cfg.bridge, name, mtu, udp.len()).await?;
    // Before anything is attached: on a host whose FORWARD policy is DROP (Docker's), nothing
    // crosses the bridge until these rules are in.
    let (mut firewall_task, firewall) = host::FirewallTask::start(
        nl.clone(),
        host.bridge.index,
        host::FixedSpec {
            bridge: cfg.bridge.clone(),
            port,
            vxlan_port: fastdp::VXLAN_PORT,
            local_only: [Some(cfg.http_addr), cfg.status_addr]
                .into_iter()
                .flatten()
                .collect(),
            dns_port: cfg.dns.as_ref().map(|d| d.listen.map_or(53, |a| a.port())),
        },
    )
    .await
    .map_err(|e| DaemonError::Config(e.to_string()))?;
    let tap_index = nl.require_link(&host.tap_name).await?.index;
    let vxlan_local = match cfg.host {
        Some(IpAddr::V4(a)) if !a.is_unspecified() => Some(a),
        _ => None,
    };
    let fast_devices = if use_fastdp {
        match fastdp::setup(&nl, &host.bridge, tap_index, name, mtu, vxlan_local).await {
            Ok(d) => Some(d),
            // Like Weave without its datapath: the sleeve carries everything, and peers are
            // told (our fast-path announcement says it is off).
            Err(e) => {
                warn!("the VXLAN fast path is unavailable: {e}; all data goes by sleeve");
                if let Err(e) = fastdp::remove(&nl, &cfg.bridge).await {
                    warn!("cleaning up after the failed fast path: {e}");
                }
                None
            }
        }
    } else {
        fastdp::remove(&nl, &cfg.bridge).await?;
        if cfg.fastdp {
            info!("fast path off: every connection is encrypted (no --trusted-subnets)");
        } else {
            info!("fast path off (--no-fastdp): all data goes by sleeve");
        }
        None
    };

    let crypto = if cfg.passwords.is_empty() {
        if !cfg.trusted_subnets.is_empty() {
            warn!("--trusted-subnets has no effect without a password: all traffic is unencrypted");
        }
        None
    } else {
        let entropy =
            secrets::OsEntropy::open().map_err(io_err("opening /dev/urandom for key material"))?;
        let static_key = state.static_key(&entropy)?;
        let mut psks = Vec::new();
        for p in &cfg.passwords {
            psks.push(p.clone().derive().await);
        }
        Some(CryptoSettings {
            static_key,
            psks,
            trusted: cfg.trusted_subnets.clone(),
            rekey_interval: weft_core::crypto::REKEY_INTERVAL,
            entropy,
            offer_aes_gcm: match cfg.data_cipher {
                None => weft_core::crypto::DataCipher::aes_in_hardware(),
                Some(c) => c == weft_core::crypto::DataCipher::Aes256Gcm,
            },
        })
    };
    let router_cfg = RouterConfig {
        name,
        nickname: cfg.nickname.clone(),
        tcp_port: port,
        udp_port: port,
        conn_limit: cfg.conn_limit,
        discovery: cfg.discovery,
        mtu,
        timing: cfg.timing.clone(),
        crypto,
        gossip_chunk: weft_proto::MAX_GOSSIP_CHUNK,
        protocol_max: weft_proto::control::PROTOCOL_MAX,
        full_mesh_peers: weft_core::mesh::FULL_MESH_PEERS,
    };
    let ipam = match &cfg.ipam {
        None => None,
        Some(s) => {
            let init = parse_ipalloc_init(s.init.as_deref(), targets.len())
                .map_err(DaemonError::Config)?;
            // Its size and the default subnet's overlap: checked by `Config::validate`.
            let mut icfg = IpamConfig::new(s.range, init);
            if let Some(d) = s.default_subnet {
                icfg.default_subnet = d.trunc();
            }
            icfg.request_timeout = s.timeout;
            let persisted = state.load_json::<Option<weft_proto::ipam::Persisted>>(IPAM_FILE)?;
            let persisted = match persisted {
                // Another peer's allocations (a new --name, or a name generated anew after the
                // peer-name file went): as Weave did, start as the new peer. The old state is
                // kept aside rather than deleted, in case the name change was a mistake.
                Some(p) if p.name != name => {
                    let aside = state.set_aside(IPAM_FILE, &p.name.to_string())?;
                    warn!(
                        "the saved IP allocation state belongs to peer {}, but this router is {name}: set it aside as {} and starting as the new peer (launch with --name {} to take it up again)",
                        p.name,
                        aside.display(),
                        p.name
                    );
                    // This peer's own state, if an earlier name change set it aside: what the
                    // advice above relies on.
                    if state.take_back(IPAM_FILE, &name.to_string())? {
                        info!("took up this peer's saved IP allocation state again");
                        state.load_json::<Option<weft_proto::ipam::Persisted>>(IPAM_FILE)?
                    } else {
                        None
                    }
                }
                p => p,
            };
            // Another range than the saved allocations': as Weave did, start the new range
            // afresh. The old state is kept aside, and taken up again with its range.
            let persisted = match persisted {
                Some(p) if (p.start, p.end) != weft_core::ipam::range_of(&s.range) => {
                    let saved = weft_core::ipam::range_text(p.start, p.end);
                    let aside = state.set_aside(IPAM_FILE, &range_tag(&saved))?;
                    warn!(
                        "the saved IP allocation state is for range {saved}, but --ipalloc-range is {}: set it aside as {} and starting the new range afresh (launch with --ipalloc-range {saved} to take it up again)",
                        s.range,
                        aside.display()
                    );
                    if state.take_back(IPAM_FILE, &range_tag(&s.range.to_string()))? {
                        info!(
                            "took up the saved IP allocation state of range {} again",
                            s.range
                        );
                        state.load_json::<Option<weft_proto::ipam::Persisted>>(IPAM_FILE)?
                    } else {
                        None
                    }
                }
                p => p,
            };
            Some((icfg, persisted))
        }
    };
    let attacher = Arc::new(attach::Attacher::new(
        host_ops.clone(),
        Some(host.netlink.clone()),
        host.bridge.index,
        mtu,
        state.clone(),
    )?);
    // Docker: without an engine the router runs all the same, and says so.
    let mut docker = engine::Startup::connect(cfg.docker.as_ref(), name.to_string()).await;
    let proxy_listeners = match (&docker.engine, &cfg.docker) {
        (Some(engine), Some(settings)) => {
            http::docker_proxy::bind(settings, engine, &mut docker.status)
                .map_err(DaemonError::Config)?
        }
        _ => Vec::new(),
    };
    let dns_domain = cfg
        .dns
        .as_ref()
        .map(|d| weft_core::dns::normalize(&d.domain));
    let mut node = Node::new(
        router_cfg,
        ipam,
        dns_domain.as_deref(),
        Instant::now(),
        random_u64(),
    )
    .map_err(|e| DaemonError::Config(e.to_string()))?;
    // Before the router serves anything: what the containers on the bridge still hold is
    // claimed again, so it is never handed out twice, even when the saved state was lost.
    if cfg.ipam.is_some() {
        if attacher.has_unknown_ports().await {
            let ids = match &docker.engine {
                Some(e) => e.ids_by_pid().await,
                None => Default::default(),
            };
            attacher.adopt_unknown(&ids).await;
        }
        let mut held = attacher.held().await;
        if let Ok((_, exposed)) = attacher.exposed().await {
            held.extend(
                exposed
                    .into_iter()
                    .map(|n| (service::EXPOSE_IDENT.to_string(), n)),
            );
        }
        node.ipam_reclaim(Instant::now(), held);
    }
    if fast_devices.is_some() {
        node.enable_fastdp(
            Instant::now(),
            weft_core::fastdp::FastDpConfig {
                enabled: true,
                mtu,
                // Whether a pair that is not connected may exchange plaintext is for its
                // connection to settle (trusted subnets): with a password, none is assumed.
                on_demand: cfg.passwords.is_empty(),
                ..Default::default()
            },
        );
    }
    let mut dial = resolved;
    if cfg.resume {
        let known: Vec<String> = state.load_json(KNOWN_PEERS_FILE).unwrap_or_default();
        // Unresolvable ones are skipped: they were addresses, and gossip finds the rest.
        if let Ok(extra) = service::resolve_peers(&known, cfg.port).await {
            for e in extra {
                if !dial.iter().any(|d| d.1 == e.1) {
                    dial.push(e);
                }
            }
        }
    }
    node.connect(Instant::now(), dial, false);
    info!(
        "weft router {VERSION} starting: peer {name}({}), port {}, overlay MTU {mtu}",
        cfg.nickname, port
    );

    let dns = match (&cfg.dns, node.dns()) {
        (Some(d), Some(records)) => {
            let listen = match d.listen {
                Some(a) => a,
                None => default_dns_listen(&nl).await,
            };
            let shared = Arc::new(dns::DnsShared::new(
                dns::DnsConfig {
                    domain: records.domain().to_string(),
                    listen,
                    ttl: d.ttl,
                    resolv_conf: d.resolv_conf.clone(),
                    fallback_timeout: d.fallback_timeout,
                },
                records.clone(),
                random_u64(),
            ));
            let range: Vec<ipnet::IpNet> = cfg.ipam.iter().map(|i| i.range.into()).collect();
            shared.set_clients(hostnet::dns_clients(&nl, &range).await?);
            let server = dns::start(shared.clone()).await?;
            {
                // Bridges and exposed addresses come and go: who may ask follows them.
                let (shared, nl, mut sd) = (shared.clone(), nl.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tokio::select! {
                            _ = tick.tick() => match hostnet::dns_clients(&nl, &range).await {
                                Ok(c) => shared.set_clients(c),
                                Err(e) => warn!("listing the host's addresses for weftDNS: {e}"),
                            },
                            _ = sd.changed() => return,
                        }
                    }
                });
            }
            Some((shared, server))
        }
        _ => None,
    };
    let dns_shared = dns.as_ref().map(|(s, _)| s.clone());

    let (ctl_tx, ctl_rx) = mpsc::channel(4096);
    let (dp_tx, dp_rx) = mpsc::channel(1024);
    let mut control = control::Control::new(
        node,
        ctl_rx,
        ctl_tx.clone(),
        dp_tx.clone(),
        state.clone(),
        cfg.host,
        dns_shared.clone(),
    );
    let fast_task = match fast_devices {
        Some(devices) => {
            let (plan_tx, plan_rx) = watch::channel(Arc::default());
            control = control.with_fastdp(plan_tx);
            firewall_task = firewall_task.with_fastdp(plan_rx.clone(), vxlan_local);
            let kernel = fastdp::Reconciler::new(
                host_ops.clone(),
                host.bridge.index,
                devices.vx.index,
                tap_index,
            );
            Some(fastdp::FastDpTask {
                kernel,
                devices,
                local: name,
                bridge_index: host.bridge.index,
                tap_index,
                mtu,
                plan: plan_rx,
                control: ctl_tx.clone(),
                dataplane: dp_tx.clone(),
                attacher: attacher.clone(),
            })
        }
        None => None,
    };
    let service = service::Service::new(service::Parts {
        version: VERSION.to_string(),
        control: ctl_tx.clone(),
        dataplane: dp_tx.clone(),
        attacher: attacher.clone(),
        interface: format!("{} (via TAP)", host.tap_name),
        mtu,
        default_port: cfg.port,
        default_subnet: cfg
            .ipam
            .as_ref()
            .map(|i| i.default_subnet.unwrap_or(i.range).trunc())
            .unwrap_or_else(|| "10.32.0.0/12".parse().expect("valid CIDR")),
        ipam_enabled: cfg.ipam.is_some(),
        encryption: !cfg.passwords.is_empty(),
        ipam_range: cfg.ipam.as_ref().map(|i| i.range),
        dns: dns_shared,
        docker: docker.engine.clone(),
        docker_status: docker.status.clone(),
        firewall,
    });

    service.attacher.restore_ports().await;
    let mut tasks = tokio::task::JoinSet::new();
    {
        // Names of containers attached before a restart come back once the router runs.
        let service = service.clone();
        tasks.spawn(async move { service.reregister().await });
    }
    if let Some(engine) = docker.engine.clone() {
        let proxy = Arc::new(http::docker_proxy::Proxy {
            service: service.clone(),
            engine: engine.clone(),
        });
        for l in proxy_listeners {
            tasks.spawn(http::docker_proxy::serve(
                proxy.clone(),
                l,
                shutdown.clone(),
            ));
        }
        if let Some(sock) = &engine.settings.plugin_socket {
            let p = http::plugin::Plugin::new(service.clone());
            http::plugin::serve(p, sock, shutdown.clone())
                .await
                .map_err(DaemonError::Config)?;
            // Docker calls back into the plugin to make it: not on the start-up path.
            let engine = engine.clone();
            tasks.spawn(async move { engine::ensure_plugin_network(&engine).await });
        }
        tasks.spawn(docker::watch_events(
            service.clone(),
            engine,
            shutdown.clone(),
        ));
    }
    if let Some((_, mut server)) = dns {
        let mut sd = shutdown.clone();
        tasks.spawn(async move {
            let _ = sd.changed().await;
            let _ = server.shutdown_gracefully().await;
        });
    }
    // The tasks without which the router carries nothing: if one ends (an error on the TAP
    // or a socket, a panic), the router exits non-zero rather than answering its API as if
    // all were well.
    let mut critical: tokio::task::JoinSet<&'static str> = tokio::task::JoinSet::new();
    {
        let sd = shutdown.clone();
        critical.spawn(async move {
            control.run(sd).await;
            "control task"
        });
    }
    tasks.spawn(firewall_task.run(shutdown.clone()));
    if let Some(t) = fast_task {
        tasks.spawn(t.run(shutdown.clone()));
    }
    {
        let dataplane = dataplane::run(
            name,
            tap,
            udp,
            path_payload,
            dp_rx,
            ctl_tx.clone(),
            shutdown.clone(),
        );
        critical.spawn(async move {
            dataplane.await;
            "data plane"
        });
        let accept = control::accept_loop(listener, ctl_tx, shutdown.clone());
        critical.spawn(async move {
            accept.await;
            "control port's accept loop"
        });
    }
    for (listener, metrics_only) in extra_http {
        let mut sd = shutdown.clone();
        let routes = if metrics_only {
            http::metrics_router(service.clone())
        } else {
            http::read_only_router(service.clone())
        };
        tasks.spawn(async move {
            let serve = axum::serve(listener, routes).with_graceful_shutdown(async move {
                let _ = sd.changed().await;
            });
            if let Err(e) = serve.await {
                warn!("status/metrics listener stopped: {e}");
            }
        });
    }
    {
        let mut sd = shutdown.clone();
        let local = http
            .local_addr()
            .map_err(io_err("reading the HTTP API's address"))?;
        if !local.ip().is_loopback() {
            warn!(
                "the HTTP API listens on {local}, not on loopback: anyone who can reach it can change this router's network (--http-addr 127.0.0.1:6784 keeps it local)"
            );
        }
        let app_router = http::router(service.clone(), local)
            .into_make_service_with_connect_info::<SocketAddr>();
        critical.spawn(async move {
            let serve = axum::serve(http, app_router).with_graceful_shutdown(async move {
                let _ = sd.changed().await;
            });
            if let Err(e) = serve.await {
                warn!("HTTP API stopped: {e}");
            }
            "HTTP API"
        });
    }
    {
        let mut sd = shutdown.clone();
        let service = service.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let gone = attacher.reap().await;
                        service.release_gone(gone).await;
                        service.release_dead().await;
                    }
                    _ = sd.changed() => return,
                }
            }
        });
    }

    let pid_file = cfg.run_dir.join(PID_FILE);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .map_err(io_err(format!("writing {}", pid_file.display())))?;

    let died = tokio::select! {
        biased;
        _ = shutdown.changed() => None,
        ended = critical.join_next() => Some(match ended {
            Some(Ok(what)) => format!("the {what} stopped"),
            Some(Err(e)) if e.is_panic() => format!("a router task panicked: {e}"),
            Some(Err(e)) => format!("a router task ended: {e}"),
            None => "no router task is left".to_string(),
        }),
    };
    if let Some(why) = &died {
        error!("{why}: the router exits, leaving the bridge and containers in place");
    } else {
        info!("shutting down; the bridge and attached containers stay in place");
    }
    // Give tasks a moment to close connections cleanly.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
        while critical.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    critical.abort_all();
    let _ = std::fs::remove_file(&pid_file);
    for a in &service.docker_status.proxy_addrs {
        if let Some(p) = a.strip_prefix("unix://") {
            let _ = std::fs::remove_file(p);
        }
    }
    match died {
        Some(why) => Err(DaemonError::TaskDied(why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod range_text_tests {
    #[test]
    fn saved_ranges_read_back_as_cidrs() {
        let (start, end) = weft_core::ipam::range_of(&"10.32.0.0/12".parse().unwrap());
        assert_eq!(weft_core::ipam::range_text(start, end), "10.32.0.0/12");
        let (start, end) = weft_core::ipam::range_of(&"10.2.0.0/16".parse().unwrap());
        assert_eq!(weft_core::ipam::range_text(start, end), "10.2.0.0/16");
        assert_eq!(super::range_tag("10.2.0.0/16"), "range-10.2.0.0-16");
    }
}

#[cfg(test)]
mod validate_tests {
    use super::*;

    fn config() -> Config {
        Config {
            name: None,
            nickname: "h".into(),
            host: None,
            port: 6783,
            http_addr: "127.0.0.1:6784".parse().unwrap(),
            status_addr: None,
            metrics_addr: None,
            conn_limit: 0,
            discovery: true,
            resume: false,
            peers: Vec::new(),
            mtu: None,
            bridge: "weft".into(),
            state_dir: "/nonexistent/state".into(),
            run_dir: "/nonexistent/run".into(),
            timing: Timing::default(),
            ipam: Some(IpamSettings::default()),
            dns: None,
            passwords: Vec::new(),
            trusted_subnets: Vec::new(),
            fastdp: true,
            docker: None,
            sleeve_workers: 0,
            data_cipher: None,
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.mtu = Some(10);
        c.resume = true;
        c.peers = vec!["10.0.0.1".into()];
        c.bridge = "a-very-long-bridge".into();
        c.ipam = Some(IpamSettings {
            range: "10.0.0.0/31".parse().unwrap(),
            default_subnet: Some("192.168.0.0/24".parse().unwrap()),
            init: Some("bogus".into()),
            ..IpamSettings::default()
        });
        let e = c.check().unwrap_err().to_string();
        for want in [
            "6 problems",
            "--resume",
            "--mtu 10",
            "--bridge",
            "too small",
            "--ipalloc-default-subnet",
            "--ipalloc-init",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
