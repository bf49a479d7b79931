//! The HTTP API (default `127.0.0.1:6784`): status text in Weave's layouts, the JSON report,
//! and the control endpoints the CLI uses.
//!
//! Errors come back as a status code with a one-line plain-text reason that the CLI prints as
//! is, so every message here must say what went wrong and, where it can, what to do.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router as Http;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, oneshot};
use weft_api::render;
use weft_api::types::*;
use weft_core::ipam::IpamStatus;
use weft_core::mesh::{ConnectionState, RouterStatus};
use weft_core::overlay::MacOwner;

use crate::attach::{AttachError, Attacher};
use crate::control::{ControlInput, IpamCmd};
use crate::dataplane::{DataPlaneMsg, DataPlaneSnapshot};
use crate::ipam_api::{ipam, ipam_error};

pub struct App {
    pub version: String,
    pub control: mpsc::Sender<ControlInput>,
    pub dataplane: mpsc::Sender<DataPlaneMsg>,
    pub attacher: Arc<Attacher>,
    pub interface: String,
    pub mtu: u32,
    pub default_port: u16,
    /// The IPAM default subnet (for `PUT /ip/{id}/{ip}`, `GET /ip/{id}`).
    pub default_subnet: Ipv4Net,
    pub ipam_enabled: bool,
    /// The allocation range (`--ipalloc-range`), when allocation is on.
    pub ipam_range: Option<Ipv4Net>,
    pub dns: Option<Arc<crate::dns::DnsShared>>,
    /// The Docker Engine, when the router could reach it.
    pub docker: Option<Arc<crate::docker::Engine>>,
    pub docker_status: crate::docker::DockerStatus,
    /// weft's rules in the host firewall (exposed subnets' NAT and accept rules).
    pub firewall: crate::host::FirewallHandle,
}

pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn unavailable() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the router is shutting down",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.message;
        body.push('\n');
        (self.status, body).into_response()
    }
}

impl App {
    /// Whether the allocator has a say over `net`'s address: addresses outside the range are
    /// the user's own business, answered at once, whatever the ring's state (as Weave did).
    pub fn allocator_owns(&self, net: &Ipv4Net) -> bool {
        self.ipam_range.is_some_and(|r| r.contains(&net.addr()))
    }
}

impl From<AttachError> for ApiError {
    fn from(e: AttachError) -> Self {
        let status = match &e {
            AttachError::NotFound(_) => StatusCode::NOT_FOUND,
            AttachError::Invalid(_) => StatusCode::BAD_REQUEST,
            AttachError::Conflict(_) => StatusCode::CONFLICT,
            AttachError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

type AppState = State<Arc<App>>;

/// The read-only part of the API: status, report, metrics (also served on `--status-addr`).
pub fn read_only_router(app: Arc<App>) -> Http {
    Http::new()
        .route("/status", get(status))
        .route("/status/{sub}", get(status_sub))
        .route("/report", get(report))
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// Only `/metrics` (for `--metrics-addr`, which may face a scraper on the network).
pub fn metrics_router(app: Arc<App>) -> Http {
    Http::new().route("/metrics", get(metrics)).with_state(app)
}

pub fn router(app: Arc<App>) -> Http {
    Http::new()
        .route("/status", get(status))
        .route("/status/{sub}", get(status_sub))
        .route("/report", get(report))
        .route("/metrics", get(metrics))
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .route("/attach", post(attach))
        .route("/detach", post(detach))
        .route("/ps", get(ps))
        .route("/expose", post(expose))
        .route("/hide", post(hide))
        .route("/peer", delete(leave))
        .route("/password", post(password))
        .route("/proxyaddrs", get(proxy_addrs))
        .merge(crate::ipam_api::routes())
        .merge(crate::dns_api::routes())
        .with_state(app)
}

/// Sends a request to the control task and waits for its answer.
pub async fn ask_control<T>(
    app: &App,
    make: impl FnOnce(oneshot::Sender<T>) -> ControlInput,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    app.control
        .send(make(tx))
        .await
        .map_err(|_| ApiError::unavailable())?;
    rx.await.map_err(|_| ApiError::unavailable())
}

pub(crate) async fn query_router(
    app: &App,
) -> Result<(RouterStatus, Option<IpamStatus>), ApiError> {
    ask_control(app, ControlInput::Status).await
}

pub(crate) async fn query_dataplane(app: &App) -> DataPlaneSnapshot {
    let (tx, rx) = oneshot::channel();
    if app
        .dataplane
        .send(DataPlaneMsg::Snapshot(tx))
        .await
        .is_err()
    {
        return DataPlaneSnapshot::default();
    }
    tokio::time::timeout(Duration::from_secs(2), rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

fn wall_clock(after: Duration) -> String {
    let t = SystemTime::now() + after;
    render::utc_timestamp(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

pub async fn build_report(app: &App) -> Result<Report, ApiError> {
    let (st, ipam_st) = query_router(app).await?;
    let dp = query_dataplane(app).await;
    let nick_of = |name: &weft_proto::PeerName| {
        st.peers
            .iter()
            .find(|p| p.name == *name)
            .map(|p| p.nickname.clone())
            .unwrap_or_default()
    };
    let connections = st
        .connections
        .iter()
        .map(|c| {
            let info = match (&c.peer, c.state) {
                (Some((name, nick)), _) => {
                    let overlay = format!("{:<6} {name}({nick})", c.overlay.unwrap_or("none"));
                    match c.encrypted {
                        // Weave's layout: with a password, say which connections encrypt data.
                        Some(true) => format!("{:<11} {overlay}", "encrypted"),
                        Some(false) => format!("{:<11} {overlay}", "unencrypted"),
                        None => overlay,
                    }
                }
                (None, ConnectionState::Failed) => match c.retry_in {
                    Some(d) => format!(
                        "{}, retry: {}",
                        c.error.as_deref().unwrap_or("failed"),
                        wall_clock(d)
                    ),
                    None => format!("{}, retry: never", c.error.as_deref().unwrap_or("failed")),
                },
                (None, ConnectionState::Retrying) => c.error.clone().unwrap_or_default(),
                (None, ConnectionState::Waiting) => "until: never".to_string(),
                (None, _) => String::new(),
            };
            let mut attrs = BTreeMap::new();
            // On the sleeve, a path that carries less than the interface lowers what one
            // datagram holds (larger frames still pass, as fragments).
            let path_mtu = match (&c.peer, c.overlay) {
                (Some((name, _)), Some("sleeve")) => dp
                    .path_limits
                    .iter()
                    .find(|(p, _)| p == name)
                    .map(|(_, payload)| {
                        let overhead = if c.encrypted == Some(true) {
                            weft_proto::sleeve::ENCRYPTED_FRAME_OVERHEAD
                        } else {
                            weft_proto::sleeve::FRAME_OVERHEAD
                        } - 28;
                        payload.saturating_sub(overhead) as u32
                    }),
                _ => None,
            };
            let mtu = match (c.mtu, path_mtu) {
                (Some(m), Some(p)) => Some(m.min(p)),
                (m, p) => m.or(p),
            };
            if let Some(mtu) = mtu {
                attrs.insert("mtu".to_string(), mtu.to_string());
            }
            if c.encrypted == Some(true) {
                attrs.insert("encrypted".to_string(), "true".to_string());
            }

            ConnectionReport {
                address: c.addr.to_string(),
                outbound: c.outbound,
                state: c.state.as_str().to_string(),
                info,
                attrs,
                key_epoch: c.key_epoch,
                overlay_reason: c.overlay_reason.clone(),
            }
        })
        .collect();
    let peers = st
        .peers
        .iter()
        .map(|p| PeerReport {
            name: p.name.to_string(),
            nick_name: p.nickname.clone(),
            uid: p.uid,
            version: p.version,
            connections: p
                .connections
                .iter()
                .map(|c| PeerConnectionReport {
                    name: c.name.to_string(),
                    nick_name: c.nickname.clone(),
                    address: c.addr.to_string(),
                    outbound: c.outbound,
                    established: c.established,
                })
                .collect(),
        })
        .collect();
    let macs = dp
        .macs
        .iter()
        .map(|(mac, owner, age)| {
            let (name, nick) = match owner {
                MacOwner::Local => (st.name, st.nickname.clone()),
                MacOwner::Peer(p) => (*p, nick_of(p)),
            };
            MacReport {
                mac: mac.to_string(),
                name: name.to_string(),
                nick_name: nick,
                last_seen_secs: age.as_secs(),
            }
        })
        .collect();
    let s = dp.stats;
    let stats: BTreeMap<String, u64> = [
        ("frames_from_containers", s.local_frames),
        ("frames_from_peers", s.remote_frames),
        ("frames_relayed", s.relayed),
        ("frames_injected", s.injected),
        ("datagrams_sent", s.sent_datagrams),
        ("dropped_malformed", s.dropped_malformed),
        ("dropped_unknown_sender", s.dropped_unknown_sender),
        ("dropped_no_route", s.dropped_no_route),
        ("dropped_loop", s.dropped_loop),
        ("dropped_stp", s.dropped_stp),
        ("dropped_too_big", s.dropped_too_big),
        ("datagrams_encrypted", s.encrypted),
        ("datagrams_decrypted", s.decrypted),
        ("dropped_no_key", s.dropped_no_key),
        ("dropped_auth_failed", s.dropped_auth),
        ("dropped_replay", s.dropped_replay),
        ("dropped_plaintext", s.dropped_plaintext),
        ("udp_send_errors", dp.io.udp_send_errors),
        ("tap_write_errors", dp.io.tap_write_errors),
        ("tap_bad_offload", dp.io.tap_bad_offload),
        ("frames_fast_path_skipped", s.fast_path_skipped),
        ("frames_relay_only", s.relay_only),
        ("dropped_proxy_arp", s.dropped_proxy_arp),
        ("datagrams_fragmented", s.fragmented),
        ("fragments_sent", s.fragments_sent),
        ("fragments_received", s.fragments_received),
        ("datagrams_reassembled", s.reassembled),
        (
            "dropped_fragments_incomplete",
            s.dropped_fragments_incomplete,
        ),
        (
            "dropped_fragments_inconsistent",
            s.dropped_fragments_inconsistent,
        ),
        ("udp_heartbeats_received", s.heartbeats_in),
        ("udp_heartbeats_dropped", dp.io.heartbeats_dropped),
        ("control_protocol_errors", st.protocol_errors),
        ("control_invalid_topology_entries", st.invalid_entries),
        ("control_udp_unexpected", st.udp_unexpected),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(Report {
        ready: true,
        version: app.version.clone(),
        version_check: Default::default(),
        router: RouterReport {
            protocol: "weft".into(),
            protocol_min_version: st.protocol_min,
            protocol_max_version: st.protocol_max,
            encryption: st.encryption,
            passwords_accepted: st.passwords,
            peer_discovery: st.discovery,
            name: st.name.to_string(),
            nick_name: st.nickname.clone(),
            port: st.port,
            peers,
            unicast_routes: st
                .unicast_routes
                .iter()
                .map(|(d, v)| UnicastRoute {
                    dest: d.to_string(),
                    via: v.to_string(),
                })
                .collect(),
            broadcast_routes: st
                .broadcast_routes
                .iter()
                .map(|(s, v)| BroadcastRoute {
                    source: s.to_string(),
                    via: v.iter().map(|p| p.to_string()).collect(),
                })
                .collect(),
            connections,
            termination_count: st.termination_count,
            targets: st.targets.clone(),
            trusted_subnets: st.trusted_subnets.clone(),
            interface: app.interface.clone(),
            macs,
            mtu: app.mtu,
            stats,
        },
        ipam: ipam_st.map(|i| ipam_report(&st, i)),
        dns: match &app.dns {
            None => None,
            Some(d) => Some(DnsReport {
                domain: d.config.domain.clone(),
                upstream: d
                    .upstream_servers()
                    .iter()
                    .map(|s| s.ip().to_string())
                    .collect(),
                address: crate::dns_api::container_facing(app)
                    .await
                    .unwrap_or(d.config.listen)
                    .to_string(),
                ttl: d.config.ttl,
                entries: crate::dns_api::entry_reports(app),
                stats: [
                    ("queries", &d.stats.queries),
                    ("local_answers", &d.stats.local_answers),
                    ("nxdomain", &d.stats.nxdomain),
                    ("forwarded", &d.stats.forwarded),
                    ("upstream_failures", &d.stats.upstream_failures),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.load(std::sync::atomic::Ordering::Relaxed)))
                .collect(),
            }),
        },
        proxy: (!app.docker_status.proxy_addrs.is_empty()).then(|| weft_api::types::ProxyReport {
            addresses: app.docker_status.proxy_addrs.clone(),
            tls: app
                .docker_status
                .proxy_tls
                .as_ref()
                .map(|t| weft_api::types::ProxyTls {
                    verify: t.verify,
                    ca_cert: t.ca.display().to_string(),
                }),
        }),
        plugin: app
            .docker_status
            .plugin_driver
            .clone()
            .map(|driver_name| weft_api::types::PluginReport { driver_name }),
        docker_unavailable: app.docker_status.unavailable.clone(),
    })
}

fn ipam_report(st: &RouterStatus, i: IpamStatus) -> IpamReport {
    let known = |p: &weft_proto::PeerName| st.peers.iter().any(|x| x.name == *p);
    let nick = |p: &weft_proto::PeerName| {
        st.peers
            .iter()
            .find(|x| x.name == *p)
            .map(|x| x.nickname.clone())
            .unwrap_or_default()
    };
    IpamReport {
        status: i.status,
        range: i.range.to_string(),
        range_num_ips: i.total,
        active_ips: i.active,
        default_subnet: i.default_subnet.to_string(),
        entries: i
            .entries
            .iter()
            .map(|(token, size, peer, version, free)| IpamEntryReport {
                token: std::net::Ipv4Addr::from(*token).to_string(),
                size: *size,
                peer: peer.to_string(),
                nickname: nick(peer),
                is_known_peer: known(peer),
                version: *version,
                free: *free,
            })
            .collect(),
        pending_claims: i.pending_claims,
        pending_allocates: i.pending_allocates,
        ring: i.ring,
        seeds: i.seeds.iter().map(ToString::to_string).collect(),
        conflicts: i.conflicts,
        owners: i
            .owners
            .iter()
            .map(|(p, n, ips, reachable)| IpamOwnerReport {
                name: p.to_string(),
                nick_name: if n.is_empty() { nick(p) } else { n.clone() },
                ips: *ips,
                reachable: *reachable,
                local: *p == st.name,
                active: if *p == st.name { i.active } else { 0 },
            })
            .collect(),
        unreachable_ips: i.unreachable_ips,
    }
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn status(State(app): AppState) -> Result<Response, ApiError> {
    let r = build_report(&app).await?;
    Ok(text(render::status(&r)))
}

async fn status_sub(State(app): AppState, Path(sub): Path<String>) -> Result<Response, ApiError> {
    let r = build_report(&app).await?;
    let body = match sub.as_str() {
        "connections" => render::connections(&r),
        "peers" => render::peers(&r),
        "targets" => render::targets(&r),
        "ipam" => render::ipam(&r),
        "dns" => render::dns(&r),
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "Invalid 'weft status' sub-command: {other} (use targets, connections, peers, ipam or dns)"
                ),
            ));
        }
    };
    Ok(text(body))
}

async fn metrics(State(app): AppState) -> Result<Response, ApiError> {
    let (router, ipam) = query_router(&app).await?;
    let dataplane = query_dataplane(&app).await;
    let local_dns_entries = app.dns.is_some().then(|| {
        let me = router.name.to_string();
        crate::dns_api::entry_reports(&app)
            .iter()
            .filter(|e| e.origin == me && !e.tombstone)
            .count()
    });
    let body = crate::metrics::render(crate::metrics::Inputs {
        router,
        ipam,
        dataplane,
        local_dns_entries,
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// `GET /report`: JSON, or with `?format=TEMPLATE` the template's output over it (Weave's
/// `weave report -f`).
async fn report(State(app): AppState, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let r = build_report(&app).await?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&q.unwrap_or_default())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad query: {e}")))?;
    let formats: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "format")
        .map(|(_, v)| v)
        .collect();
    match formats.as_slice() {
        [] => {
            let body = serde_json::to_string_pretty(&r).expect("report serializes");
            Ok(([(header::CONTENT_TYPE, "application/json")], body + "\n").into_response())
        }
        [t] => {
            let v = serde_json::to_value(&r).expect("report serializes");
            weft_api::template::render(t, &v)
                .map(IntoResponse::into_response)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "error: must supply one format parameter",
        )),
    }
}

/// Reads a peers request as JSON, or as a form/query with repeated `peer=` keys (as Weave's
/// API takes it).
fn peers_request(
    headers: &HeaderMap,
    query: Option<String>,
    body: &Bytes,
) -> Result<PeersRequest, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return serde_json::from_slice(body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {e}")));
    }
    let mut req = PeersRequest::default();
    let form = [
        query.unwrap_or_default(),
        String::from_utf8_lossy(body).into_owned(),
    ];
    for part in form {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&part)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad form: {e}")))?;
        for (k, v) in pairs {
            match k.as_str() {
                "peer" => req.peers.push(v),
                "replace" => req.replace = v == "true",
                _ => {}
            }
        }
    }
    Ok(req)
}

/// Splits `host[:port]` and resolves it (once, as Weave does).
async fn resolve_peer(spec: &str, default_port: u16) -> Result<(SocketAddr, bool), String> {
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok((sa, true));
    }
    if let Ok(ip) = spec.parse::<std::net::IpAddr>() {
        return Ok((SocketAddr::new(ip, default_port), false));
    }
    let (host, port, given) = match spec.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("invalid peer {spec:?}: bad port {p:?}"))?;
            (h.to_string(), port, true)
        }
        None => (spec.to_string(), default_port, false),
    };
    if host.is_empty() {
        return Err(format!("invalid peer {spec:?}: empty host"));
    }
    let mut addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve peer {host:?}: {e}"))?;
    let first = addrs
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("cannot resolve peer {host:?}: no IPv4 address"))?;
    Ok((first, given))
}

pub async fn resolve_peers(
    specs: &[String],
    default_port: u16,
) -> Result<Vec<(String, SocketAddr, bool)>, Vec<String>> {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for s in specs {
        match resolve_peer(s, default_port).await {
            Ok((addr, given)) => ok.push((s.clone(), addr, given)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors)
    }
}

async fn connect(
    State(app): AppState,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = peers_request(&headers, q, &body)?;
    let targets = resolve_peers(&req.peers, app.default_port)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.join("\n")))?;
    ask_control(&app, |reply| ControlInput::Connect {
        targets,
        replace: req.replace,
        reply,
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}

async fn forget(
    State(app): AppState,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = peers_request(&headers, q, &body)?;
    ask_control(&app, |reply| ControlInput::Forget {
        targets: req.peers,
        reply,
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

/// A name in our domain: `web` → `web.weave.local.`; a name with dots is taken as given.
fn qualify(app: &App, h: &str) -> String {
    let domain = app
        .dns
        .as_ref()
        .map_or("weave.local.", |d| d.config.domain.as_str());
    if h.contains('.') {
        h.to_string()
    } else {
        format!("{h}.{domain}")
    }
}

/// The name a container gets when none is asked for: an `ip netns` name becomes
/// `<name>.<domain>`; a process's own hostname counts if it is in the domain.
async fn default_hostname(app: &App, container: &str) -> Option<String> {
    let domain = &app.dns.as_ref()?.config.domain;
    if container.bytes().all(|b| b.is_ascii_digit()) {
        let pid: u32 = container.parse().ok()?;
        let h = weft_linux::netns::uts_hostname(pid).await?;
        let n = weft_core::dns::normalize(&h);
        return n.ends_with(&format!(".{domain}")).then_some(h);
    }
    if container.starts_with('/') {
        return None;
    }
    let label = crate::docker::rewrite::hostname_from_name(container);
    (!label.is_empty()).then(|| format!("{label}.{domain}"))
}

/// Puts the names of attached containers back after a router restart.
pub async fn reregister(app: &App) {
    if app.dns.is_none() {
        return;
    }
    for a in app.attacher.attachments().await {
        if let Some(h) = &a.hostname {
            let addrs: Vec<_> = a.cidrs.iter().map(|n| n.addr()).collect();
            if let Err(e) = crate::dns_api::register(app, h, &a.id, &addrs).await {
                tracing::warn!(container = %a.id, "cannot re-register {h}: {}", e.message());
            }
        }
    }
}

fn parse_specs(addrs: &[String]) -> Result<Vec<AddrSpec>, ApiError> {
    addrs
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, e))
        })
        .collect()
}

/// `POST /password`: add, use or drop a password at run time (see `weft password`).
async fn password(State(app): AppState, body: Bytes) -> Result<Response, ApiError> {
    use weft_core::crypto::PasswordChange;
    let req: PasswordRequest = json_body(&body)?;
    let change = match req.action.as_str() {
        "add" => PasswordChange::Add,
        "use" => PasswordChange::Use,
        "drop" => PasswordChange::Drop,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown password action {other:?}: use add, use or drop"),
            ));
        }
    };
    let Some(pw) = crate::secrets::Password::new(req.password.as_bytes()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the password is empty",
        ));
    };
    let psk = pw.derive().await;
    let accepted = ask_control(&app, |reply| ControlInput::Password { change, psk, reply })
        .await?
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    Ok(axum::Json(PasswordResponse { accepted }).into_response())
}

async fn attach(State(app): AppState, body: Bytes) -> Result<Response, ApiError> {
    let mut req: AttachRequest = json_body(&body)?;
    let (netns, docker) = crate::docker::resolve(&app, &req.container).await?;
    req.container = netns;
    let ident = docker.as_ref().map(|c| c.id.clone());
    if req.hostname.is_none()
        && let Some(h) = docker.as_ref().and_then(|c| c.fqdn.clone())
        && h.contains('.')
    {
        req.hostname = Some(h);
    }
    for h in &req.add_hosts {
        check_add_host(h)?;
    }
    let rewrite = req.rewrite_hosts || !req.add_hosts.is_empty();
    if rewrite && docker.is_none() {
        // Refused before anything is attached.
        let ns = weft_linux::netns::resolve(&req.container)
            .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
        if crate::attach::etc_hosts_path(&ns).is_none() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "cannot rewrite the /etc/hosts of {}: it has no file system of its own (that would be the host's /etc/hosts); attach it by its ip netns name, or by the PID of a process in its own mount namespace, to use --rewrite-hosts",
                    req.container
                ),
            ));
        }
    }
    let extra = req.add_hosts.clone();
    let r = attach_container(&app, req, ident).await?;
    if rewrite {
        rewrite_etc_hosts(&app, &r, docker.as_ref(), &extra).await?;
    }
    Ok(axum::Json(r).into_response())
}

/// `--add-host NAME:IP`, as Docker and Weave take it.
fn check_add_host(h: &str) -> Result<(), ApiError> {
    match h.split_once(':') {
        Some((name, ip)) if !name.is_empty() && ip.parse::<std::net::IpAddr>().is_ok() => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("--add-host {h:?}: give NAME:IP, like --add-host db.example:10.2.1.9"),
        )),
    }
}

/// `attach --rewrite-hosts`: the container's `/etc/hosts` names it with its weft addresses
/// (and the `--add-host` names), as Weave's did.
async fn rewrite_etc_hosts(
    app: &App,
    r: &AttachResponse,
    docker: Option<&crate::docker::Container>,
    extra: &[String],
) -> Result<(), ApiError> {
    let ips: Vec<std::net::IpAddr> = r
        .addresses
        .iter()
        .map(|n| std::net::IpAddr::V4(n.addr()))
        .collect();
    if let Some(c) = docker {
        let (host, domain) = c.host_and_domain();
        let text = crate::docker::rewrite::hosts_file(&host, &domain, &ips, extra);
        let path = c.hosts_path().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "container {} has no /etc/hosts of Docker's to rewrite",
                    c.name
                ),
            )
        })?;
        return std::fs::write(&path, text).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rewriting {path}: {e}"),
            )
        });
    }
    let ident = &r.container.id;
    let a = app.attacher.lookup_ident(ident).await;
    // The name it is registered under, else its process's hostname, else its netns name.
    let name = match &a {
        Some(a) => match (&a.hostname, weft_linux::netns::pid_of(&a.netns)) {
            (Some(h), _) => Some(h.trim_end_matches('.').to_string()),
            (None, Some(pid)) => weft_linux::netns::uts_hostname(pid).await,
            (None, None) => a
                .netns
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
        },
        None => None,
    }
    .unwrap_or_else(|| ident.clone());
    let text = crate::docker::rewrite::hosts_file(&name, "", &ips, extra);
    app.attacher.write_etc_hosts(ident, &text).await?;
    Ok(())
}

/// Attach: address arguments become addresses (allocated, claimed, or taken as given when IP
/// allocation is off), then the container is plugged in. If plugging in fails, addresses this
/// request obtained are released again. `ident` names a container not attached yet (a Docker
/// container's id); by default the reference given.
pub async fn attach_container(
    app: &App,
    req: AttachRequest,
    ident: Option<String>,
) -> Result<AttachResponse, ApiError> {
    let mut specs = parse_specs(&req.addrs)?;
    if specs.is_empty() {
        specs.push(AddrSpec::DefaultSubnet);
    }
    for spec in &specs {
        if let AddrSpec::Exact(net) = spec {
            crate::attach::check_cidr(net)?;
        }
    }
    let runtime_ident = req.ident.is_some();
    let ident = match (
        app.attacher.lookup(&req.container).await?,
        ident.or(req.ident),
    ) {
        // An ident given by a runtime names one attachment: another one in the same
        // namespace would need a second interface, which weft does not make.
        (Some(a), Some(i)) if runtime_ident && a.id != i => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "{} is already attached to weft as {} (interface {}): one weft interface per namespace",
                    req.container, a.id, a.ifname
                ),
            ));
        }
        (Some(a), _) => a.id,
        (None, Some(i)) => i,
        (None, None) => app.attacher.identify(&req.container).await?,
    };
    let ifname = req
        .ifname
        .unwrap_or_else(|| crate::attach::CONTAINER_IFNAME.to_string());
    check_ifname(&ifname)?;
    // A name asked for while DNS is off is kept with the attachment all the same: a later
    // launch with DNS registers it, as Weave's did for containers it found on the bridge.
    let hostname = if req.without_dns {
        None
    } else {
        match &req.hostname {
            Some(h) => Some(qualify(app, h)),
            None => default_hostname(app, &req.container).await,
        }
    };
    let (nets, obtained) = obtain(app, &ident, specs).await?;
    let gateway = if req.gateway {
        match gateway_for(app, nets[0].trunc()).await {
            Ok(g) => Some(g),
            Err(e) => {
                release_addrs(app, &ident, &obtained).await;
                return Err(e);
            }
        }
    } else {
        None
    };
    let mut routes = req.routes.clone();
    routes.extend(gateway.map(|g| RouteSpec {
        dst: Ipv4Net::default(),
        gw: Some(g),
    }));
    let opts = crate::attach::PlugOptions {
        ifname,
        multicast_route: req.multicast_route,
        hairpin: req.hairpin,
        routes,
    };
    match app
        .attacher
        .attach(&req.container, &ident, nets.clone(), opts, hostname.clone())
        .await
    {
        Ok(entry) => {
            if let Some(h) = hostname.as_ref().filter(|_| app.dns.is_some()) {
                let addrs: Vec<_> = nets.iter().map(|n| n.addr()).collect();
                crate::dns_api::register(app, h, &ident, &addrs).await?;
            }
            Ok(AttachResponse {
                container: entry,
                addresses: nets,
                gateway,
            })
        }
        Err(e) => {
            release_addrs(app, &ident, &obtained).await;
            Err(e.into())
        }
    }
}

/// Interface names the kernel takes: 1–15 bytes, no `/`, whitespace or `:`.
fn check_ifname(name: &str) -> Result<(), ApiError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid interface name {name:?}: 1 to 15 characters without '/', ':' or spaces"
            ),
        ));
    }
    Ok(())
}

/// The host's address on the bridge in `subnet`: the containers' default gateway. When the
/// host has none there yet it is exposed in that subnet first, as Weave's CNI plugin did.
async fn gateway_for(app: &App, subnet: Ipv4Net) -> Result<Ipv4Addr, ApiError> {
    // Two containers attached at once must not expose the host twice.
    static EXPOSING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = EXPOSING.lock().await;
    let (_, have) = app.attacher.exposed().await?;
    if let Some(n) = have.iter().find(|n| subnet.contains(&n.addr())) {
        return Ok(n.addr());
    }
    let nets = expose_addrs(app, vec![AddrSpec::Subnet(subnet)], true).await?;
    tracing::info!(address = %nets[0], "exposed the host as the containers' gateway");
    Ok(nets[0].addr())
}

/// Gives the host addresses on the bridge (allocated like a container's under
/// `weave:expose`) and, once the call returns, the firewall rules that route and masquerade
/// (unless `masquerade` is false) those subnets; what this obtained goes back if the bridge
/// refuses them.
async fn expose_addrs(
    app: &App,
    specs: Vec<AddrSpec>,
    masquerade: bool,
) -> Result<Vec<Ipv4Net>, ApiError> {
    let (nets, obtained) = obtain(app, EXPOSE_IDENT, specs).await?;
    for n in &nets {
        app.firewall.set_masquerade(*n, masquerade);
    }
    if let Err(e) = app.attacher.expose(&nets).await {
        release_addrs(app, EXPOSE_IDENT, &obtained).await;
        return Err(e.into());
    }
    sync_firewall(app).await?;
    Ok(nets)
}

async fn sync_firewall(app: &App) -> Result<(), ApiError> {
    app.firewall.sync().await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the addresses are on the bridge, but the firewall rules for them failed: {e}"),
        )
    })
}

/// Forgets what `ident` holds: its names in weftDNS and its addresses (returned).
async fn forget_ident(app: &App, ident: &str) -> Result<Vec<Ipv4Net>, ApiError> {
    crate::dns_api::unregister(app, ident, None).await;
    if !app.ipam_enabled {
        return Ok(Vec::new());
    }
    ipam(app, |reply| IpamCmd::Release {
        ident: ident.to_string(),
        addr: None,
        reply,
    })
    .await
}

/// Detach: `net:` arguments mean "the container's addresses in that subnet". The addresses go
/// back to IP allocation.
async fn detach(State(app): AppState, body: Bytes) -> Result<Response, ApiError> {
    let mut req: DetachRequest = json_body(&body)?;
    if let Some(ident) = &req.ident {
        let removed = app.attacher.detach_ident(ident).await;
        let released = forget_ident(&app, ident).await?;
        let released = if app.ipam_enabled {
            released
        } else {
            removed.map(|a| a.cidrs).unwrap_or_default()
        };
        return Ok(axum::Json(released).into_response());
    }
    req.container = crate::docker::resolve(&app, &req.container).await?.0;
    let mut specs = parse_specs(&req.addrs)?;
    // As Weave: no address means what `attach` with no address gives, the default subnet's.
    if specs.is_empty() {
        specs.push(AddrSpec::DefaultSubnet);
    }
    let remove = {
        let Some(entry) = app.attacher.lookup(&req.container).await? else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("container {} is not attached to weft", req.container),
            ));
        };
        let mut list = Vec::new();
        for spec in specs {
            match spec {
                AddrSpec::Exact(n) => list.push(n),
                AddrSpec::Subnet(s) => {
                    list.extend(entry.cidrs.iter().filter(|c| s.contains(&c.addr())))
                }
                AddrSpec::DefaultSubnet => list.extend(
                    entry
                        .cidrs
                        .iter()
                        .filter(|c| app.default_subnet.contains(&c.addr())),
                ),
            }
        }
        list.dedup();
        Some(list)
    };
    let (ident, removed) = app.attacher.detach(&req.container, remove).await?;
    for n in &removed {
        crate::dns_api::unregister(&app, &ident, Some(n.addr())).await;
    }
    release_addrs(&app, &ident, &removed).await;
    Ok(axum::Json(removed).into_response())
}

/// The IPAM ident of the host's own addresses on the bridge (Weave's).
pub const EXPOSE_IDENT: &str = "weave:expose";

/// Resolves address arguments for `ident` through IPAM (or takes exact ones as given when
/// allocation is off). On failure, releases what this call obtained.
async fn obtain(
    app: &App,
    ident: &str,
    specs: Vec<AddrSpec>,
) -> Result<(Vec<Ipv4Net>, Vec<Ipv4Net>), ApiError> {
    let needs_allocator = specs.iter().any(|s| match s {
        AddrSpec::Exact(net) => app.allocator_owns(net),
        AddrSpec::Subnet(_) | AddrSpec::DefaultSubnet => true,
    });
    let before: Vec<Ipv4Net> = if app.ipam_enabled && needs_allocator {
        ipam(app, |reply| IpamCmd::Lookup {
            ident: ident.to_string(),
            subnet: None,
            reply,
        })
        .await?
    } else {
        Vec::new()
    };
    let mut nets = Vec::new();
    let mut obtained = Vec::new();
    for spec in specs {
        let r = match spec {
            AddrSpec::Exact(net) if !app.allocator_owns(&net) => Ok(net),
            _ if !app.ipam_enabled => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "IP address allocation is disabled (--ipalloc-range \"\"): give explicit addresses like 10.32.0.1/12",
            )),
            AddrSpec::Exact(net) => ipam(app, |reply| IpamCmd::Claim {
                ident: ident.to_string(),
                net,
                reply,
            })
            .await
            .and_then(|r| r.map_err(ipam_error)),
            AddrSpec::Subnet(_) | AddrSpec::DefaultSubnet => {
                let subnet = match spec {
                    AddrSpec::Subnet(s) => Some(s),
                    _ => None,
                };
                ipam(app, |reply| IpamCmd::Allocate {
                    ident: ident.to_string(),
                    subnet,
                    reply,
                })
                .await
                .and_then(|r| r.map_err(ipam_error))
            }
        };
        match r {
            Ok(net) => {
                if app.allocator_owns(&net) && !before.contains(&net) {
                    obtained.push(net);
                }
                nets.push(net);
            }
            Err(e) => {
                release_addrs(app, ident, &obtained).await;
                return Err(e);
            }
        }
    }
    Ok((nets, obtained))
}

async fn release_addrs(app: &App, ident: &str, nets: &[Ipv4Net]) {
    if !app.ipam_enabled {
        return;
    }
    for n in nets.iter().filter(|n| app.allocator_owns(n)) {
        let _ = ipam(app, |reply| IpamCmd::Release {
            ident: ident.to_string(),
            addr: Some(n.addr()),
            reply,
        })
        .await;
    }
}

/// `weft expose`: addresses for the host itself on the bridge (allocated like a container's).
async fn expose(State(app): AppState, body: Bytes) -> Result<Response, ApiError> {
    let req: ExposeRequest = json_body(&body)?;
    let mut specs = parse_specs(&req.addrs)?;
    if specs.is_empty() {
        specs.push(AddrSpec::DefaultSubnet);
    }
    for spec in &specs {
        if let AddrSpec::Exact(net) = spec {
            crate::attach::check_cidr(net)?;
        }
    }
    let nets = expose_addrs(&app, specs, !req.without_masquerade).await?;
    if let (Some(h), Some(_)) = (&req.hostname, &app.dns) {
        let addrs: Vec<_> = nets.iter().map(|n| n.addr()).collect();
        crate::dns_api::register(&app, &qualify(&app, h), EXPOSE_IDENT, &addrs).await?;
    }
    Ok(axum::Json(nets).into_response())
}

/// `weft hide`: removes the host's addresses from the bridge (all, or those given).
async fn hide(State(app): AppState, body: Bytes) -> Result<Response, ApiError> {
    let req: ExposeRequest = json_body(&body)?;
    let specs = parse_specs(&req.addrs)?;
    let (_, have) = app.attacher.exposed().await?;
    let remove: Vec<Ipv4Net> = if specs.is_empty() {
        have
    } else {
        have.into_iter()
            .filter(|h| {
                specs.iter().any(|s| match s {
                    AddrSpec::Exact(n) => n == h,
                    AddrSpec::Subnet(sn) => sn.contains(&h.addr()),
                    AddrSpec::DefaultSubnet => app.default_subnet.contains(&h.addr()),
                })
            })
            .collect()
    };
    app.attacher.hide(&remove).await?;
    sync_firewall(&app).await?;
    for n in &remove {
        crate::dns_api::unregister(&app, EXPOSE_IDENT, Some(n.addr())).await;
    }
    release_addrs(&app, EXPOSE_IDENT, &remove).await;
    Ok(axum::Json(remove).into_response())
}

async fn ps(State(app): AppState, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&q.unwrap_or_default())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad query: {e}")))?;
    let only: Vec<String> = pairs
        .into_iter()
        .filter(|(k, _)| k == "container")
        .map(|(_, v)| v)
        .collect();
    let mut list = Vec::new();
    let everything = only.is_empty();
    if everything || only.iter().any(|o| o == EXPOSE_IDENT) {
        // Always listed, as Weave's ps did: the host's line, with its addresses once exposed.
        let (mac, nets) = app.attacher.exposed().await?;
        list.push(ContainerEntry {
            id: EXPOSE_IDENT.to_string(),
            mac,
            cidrs: nets,
        });
    }
    if everything {
        list.extend(app.attacher.list(&[]).await?);
        if let Some(engine) = &app.docker {
            list.extend(crate::docker::plugin_entries(engine, None).await);
        }
        return Ok(axum::Json(list).into_response());
    }
    // Each as named, the way Weave's ps echoed its arguments: by netns, or a Docker name or id.
    for o in only.into_iter().filter(|o| o != EXPOSE_IDENT) {
        let (netns, docker) = crate::docker::resolve(&app, &o).await?;
        let mut found = app.attacher.list(std::slice::from_ref(&netns)).await?;
        if found.is_empty()
            && let (Some(engine), Some(c)) = (&app.docker, docker)
        {
            found = crate::docker::plugin_entries(engine, Some(&[(o.clone(), c.id)])).await;
        }
        for mut e in found {
            if e.id != o && crate::docker::is_container_id(&e.id) {
                e.id = o.clone();
            }
            list.push(e);
        }
    }
    Ok(axum::Json(list).into_response())
}

/// `DELETE /peer`: this peer is leaving the mesh for good (`weft reset`): its address ranges
/// go to a live peer. Answers once the hand-over has been sent.
async fn leave(State(app): AppState) -> Result<Response, ApiError> {
    if !app.ipam_enabled {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let heir = ipam(&app, |reply| IpamCmd::Shutdown { reply }).await?;
    // The hand-over is queued on the connections; give the writers a moment to send it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(match heir {
        Some(h) => format!("address ranges handed over to {h}\n").into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Releases the addresses and names of containers that went away.
pub async fn release_gone(app: &App, gone: Vec<crate::attach::Attachment>) {
    for a in gone {
        // A Docker container that stopped keeps its addresses, as Weave's did: a restart
        // (by hand, by its restart policy, with the router restarted in between) gets them
        // back. They go when the container is removed, or after a grace period if it never
        // comes back (see `docker::DEAD_GRACE`). Its names go now, and come back with it.
        if let Some(engine) = &app.docker
            && crate::docker::is_container_id(&a.id)
        {
            crate::dns_api::unregister(app, &a.id, None).await;
            engine.died(&a.id).await;
            continue;
        }
        let _ = forget_ident(app, &a.id).await;
    }
}

/// Releases the addresses of Docker containers that died longer than the grace period ago
/// and did not come back.
pub async fn release_dead(app: &App) {
    let Some(engine) = &app.docker else { return };
    for id in engine.expired_dead().await {
        tracing::info!(container = %id, "the container did not come back: releasing its addresses");
        let _ = forget_ident(app, &id).await;
    }
}

/// A Docker container was removed: its addresses and names go at once.
pub async fn container_destroyed(app: &App, id: &str) {
    if let Some(engine) = &app.docker {
        engine.started(id).await;
    }
    let _ = app.attacher.detach_ident(id).await;
    let _ = forget_ident(app, id).await;
}

/// Every ident holding addresses in the allocator here.
pub async fn owned_idents(app: &App) -> Vec<String> {
    if !app.ipam_enabled {
        return Vec::new();
    }
    crate::ipam_api::ipam(app, |reply| IpamCmd::Owned { reply })
        .await
        .unwrap_or_default()
}

/// `GET /proxyaddrs`: the Docker proxy's addresses, one per line (Weave's; `weft env` uses it).
async fn proxy_addrs(State(app): AppState) -> Response {
    let mut s = app.docker_status.proxy_addrs.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s.into_response()
}
