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

pub mod api;
pub mod attach;
pub mod control;
pub mod dataplane;
pub mod hostnet;
pub mod state;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use weft_core::mesh::{Router, RouterConfig, Timing};
use weft_linux::netlink::Netlink;
use weft_proto::PeerName;

use crate::state::{StateDir, StateError};

pub const TARGETS_FILE: &str = "targets.json";
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
    pub conn_limit: usize,
    pub discovery: bool,
    pub resume: bool,
    pub peers: Vec<String>,
    pub mtu: Option<u32>,
    pub bridge: String,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub timing: Timing,
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

/// Runs the router until `shutdown` becomes true.
pub async fn run(cfg: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), DaemonError> {
    let state = StateDir::open(&cfg.state_dir)?;
    std::fs::create_dir_all(&cfg.run_dir)
        .map_err(io_err(format!("creating {}", cfg.run_dir.display())))?;
    let name = state.peer_name(cfg.name, random_u64())?;
    let targets: Vec<String> = if cfg.resume {
        if !cfg.peers.is_empty() {
            return Err(DaemonError::Config(
                "--resume cannot be combined with peer arguments: it reconnects to the peers of the previous run".into(),
            ));
        }
        state.load_json(TARGETS_FILE)?
    } else {
        cfg.peers.clone()
    };
    let resolved = api::resolve_peers(&targets, cfg.port)
        .await
        .map_err(|e| DaemonError::Config(e.join("; ")))?;
    state.save_json(TARGETS_FILE, &targets)?;

    let nl = Netlink::new()?;
    let bridge_tap = format!("{}-tap", cfg.bridge);
    let mtu = match cfg.mtu {
        Some(m) if !(hostnet::MIN_MTU..=hostnet::MAX_MTU).contains(&m) => {
            return Err(DaemonError::Config(format!(
                "--mtu {m} is out of range; use {}..{}",
                hostnet::MIN_MTU,
                hostnet::MAX_MTU
            )));
        }
        Some(m) => m,
        None => {
            let (ifname, under) =
                hostnet::underlay(&nl, cfg.host, &[cfg.bridge.as_str(), bridge_tap.as_str()])
                    .await?;
            let m = hostnet::overlay_mtu(under);
            info!(
                underlay = %ifname,
                underlay_mtu = under,
                overlay_mtu = m,
                "overlay MTU = underlay MTU - {} (sleeve encapsulation)",
                weft_proto::sleeve::FRAME_OVERHEAD
            );
            m
        }
    };
    let (host, tap) = hostnet::setup(nl.clone(), &cfg.bridge, name, mtu).await?;

    let bind_ip = cfg.host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let control_addr = SocketAddr::new(bind_ip, cfg.port);
    let listener = TcpListener::bind(control_addr)
        .await
        .map_err(io_err(format!(
            "listening on TCP {control_addr} (is another weft router running here?)"
        )))?;
    let udp = weft_linux::udp::bind_sleeve(control_addr)?;
    let udp = Arc::new(
        UdpSocket::from_std(udp).map_err(io_err(format!("registering UDP {control_addr}")))?,
    );
    let http = TcpListener::bind(cfg.http_addr)
        .await
        .map_err(io_err(format!("listening on HTTP {}", cfg.http_addr)))?;

    let router_cfg = RouterConfig {
        name,
        nickname: cfg.nickname.clone(),
        tcp_port: cfg.port,
        udp_port: cfg.port,
        conn_limit: cfg.conn_limit,
        discovery: cfg.discovery,
        mtu,
        timing: cfg.timing.clone(),
    };
    let mut router = Router::new(router_cfg, Instant::now(), random_u64());
    router.connect(Instant::now(), resolved, false);
    info!(
        "weft router {VERSION} starting: peer {name}({}), port {}, overlay MTU {mtu}",
        cfg.nickname, cfg.port
    );

    let (ctl_tx, ctl_rx) = mpsc::channel(4096);
    let (dp_tx, dp_rx) = mpsc::channel(256);
    let control = control::Control::new(
        router,
        ctl_rx,
        ctl_tx.clone(),
        udp.clone(),
        dp_tx.clone(),
        state.clone(),
        cfg.host,
    );
    let attacher = Arc::new(attach::Attacher::new(
        host.netlink.clone(),
        host.bridge.index,
        mtu,
        state.clone(),
    )?);
    let app = Arc::new(api::App {
        version: VERSION.to_string(),
        control: ctl_tx.clone(),
        dataplane: dp_tx.clone(),
        attacher: attacher.clone(),
        interface: format!("{} (via TAP)", host.tap_name),
        mtu,
        default_port: cfg.port,
    });

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control.run(shutdown.clone()));
    tasks.spawn(dataplane::run(
        name,
        tap,
        udp,
        dp_rx,
        ctl_tx.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(control::accept_loop(listener, ctl_tx, shutdown.clone()));
    {
        let mut sd = shutdown.clone();
        let app_router = api::router(app);
        tasks.spawn(async move {
            let serve = axum::serve(http, app_router).with_graceful_shutdown(async move {
                let _ = sd.changed().await;
            });
            if let Err(e) = serve.await {
                warn!("HTTP API stopped: {e}");
            }
        });
    }
    {
        let mut sd = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = tick.tick() => { attacher.reap().await; }
                    _ = sd.changed() => return,
                }
            }
        });
    }

    let pid_file = cfg.run_dir.join(PID_FILE);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .map_err(io_err(format!("writing {}", pid_file.display())))?;

    let _ = shutdown.changed().await;
    info!("shutting down; the bridge and attached containers stay in place");
    // Give tasks a moment to close connections cleanly.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let _ = std::fs::remove_file(&pid_file);
    Ok(())
}
